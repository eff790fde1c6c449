-- MLflow and Optuna both keep an alembic_version table: they need separate databases.
CREATE DATABASE mlflow OWNER fer;
