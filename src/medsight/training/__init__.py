"""What every task's training shares: the loop's callbacks (early stopping, keep-best, time limit, logs,
progress), optimisers and schedules, and the moving average of the weights."""
