"""The performance metrics by name: which a task computes, which a model may judge on and which way is
better. Plain values with no imports, so the config can validate `main_metric` without loading the
statistics (scipy takes seconds to import)."""

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier_score",
                          "positive_rate", "predicted_positive_rate")
REGRESSION_METRICS = ("mae", "rmse", "mape", "r2", "mean_error")
# Multiclass: `precision`, `recall` and `f1` hold the macro means (over the classes present that day).
MULTICLASS_METRICS = ("accuracy", "precision", "recall", "f1", "f1_macro", "f1_weighted", "log_loss", "roc_auc")

HIGHER, LOWER = "higher", "lower"
# Every metric a model may choose as its main metric, and which way is better.
METRIC_DIRECTION = {
    "accuracy": HIGHER, "f1": HIGHER, "precision": HIGHER, "recall": HIGHER, "roc_auc": HIGHER,
    "log_loss": LOWER, "brier_score": LOWER, "f1_macro": HIGHER, "f1_weighted": HIGHER,
    "mae": LOWER, "rmse": LOWER, "mape": LOWER, "r2": HIGHER,
}
MAIN_METRICS = {"binary_classification": ("accuracy", "f1", "precision", "recall", "roc_auc", "log_loss", "brier_score"),
                "regression": ("mae", "rmse", "mape", "r2"),
                "multiclass_classification": MULTICLASS_METRICS}
# Metrics computed on the predicted class (the logged decision, else score >= threshold).
CLASS_METRICS = ("accuracy", "precision", "recall", "f1", "predicted_positive_rate")
# Metrics estimated before the labels arrive (stats.estimation): confidence-based for classifiers, direct
# loss estimation for regressors.
ESTIMABLE_METRICS = {"binary_classification": ("accuracy", "precision", "recall", "f1", "specificity", "roc_auc"),
                     "regression": ("mae", "rmse"),
                     "multiclass_classification": ("accuracy", "f1_macro", "f1_weighted", "roc_auc")}
ESTIMATION_METHODS = {"binary_classification": ("auto", "confidence", "confidence_reweighted", "none"),
                      "regression": ("auto", "loss_model", "loss_model_reweighted", "none"),
                      "multiclass_classification": ("auto", "confidence", "none")}
