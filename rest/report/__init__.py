"""What people read: MLflow tracking, the status table, plots, terminal progress."""
