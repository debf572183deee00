"""The names of the metrics that evaluation computes and the reports, the export gate and the fold summaries show.

They are a contract between the layers: classification and segmentation compute these keys, and the
report (below the tasks) draws and labels them without importing the tasks.
"""

#: Classification metrics, in the order reports list them.
METRIC_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "npv",
    "f1",
    "auc",
    "pr_auc",
)

#: Segmentation metrics measured in the data's distance unit (``distance_unit``: ``px`` or ``mm``).
DISTANCE_KEYS = ("hd95", "assd")
