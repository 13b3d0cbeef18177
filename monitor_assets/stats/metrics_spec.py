"""The performance metrics by name: which a task computes, which a model may judge on and which way is
better. Plain values with no imports, so the config can validate `main_metric` without loading the
statistics (scipy takes seconds to import)."""

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier_score",
                          "positive_rate", "predicted_positive_rate")
REGRESSION_METRICS = ("mae", "rmse", "mape", "r2", "mean_error")

HIGHER, LOWER = "higher", "lower"
# Every metric a model may choose as its main metric, and which way is better.
METRIC_DIRECTION = {
    "accuracy": HIGHER, "f1": HIGHER, "precision": HIGHER, "recall": HIGHER, "roc_auc": HIGHER,
    "log_loss": LOWER, "brier_score": LOWER,
    "mae": LOWER, "rmse": LOWER, "mape": LOWER, "r2": HIGHER,
}
MAIN_METRICS = {"binary_classification": ("accuracy", "f1", "precision", "recall", "roc_auc", "log_loss", "brier_score"),
                "regression": ("mae", "rmse", "mape", "r2")}
# Metrics computed on the predicted class (the logged decision, else score >= threshold).
CLASS_METRICS = ("accuracy", "precision", "recall", "f1", "predicted_positive_rate")
# Metrics estimated before the labels arrive (stats.estimation): confidence-based for classifiers, direct
# loss estimation for regressors.
ESTIMABLE_METRICS = {"binary_classification": ("accuracy", "precision", "recall", "f1", "specificity", "roc_auc"),
                     "regression": ("mae", "rmse")}
ESTIMATION_METHODS = {"binary_classification": ("auto", "confidence", "confidence_reweighted", "none"),
                      "regression": ("auto", "loss_model", "loss_model_reweighted", "none")}
