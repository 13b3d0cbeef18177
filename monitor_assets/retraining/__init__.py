"""The closed loop: model versions, reference loss batches, the retraining trigger and requests, champion vs challenger."""
