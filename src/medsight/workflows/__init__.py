"""One function per command: train (task dispatch and cross-validation), evaluate, plan, demo, pretrain, retrain."""
