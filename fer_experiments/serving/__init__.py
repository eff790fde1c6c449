"""The promoted model at work: face detection (``detector``), image decoding (``images``), batch classification
(``predictor``), the REST app (``app``), the pyfunc service for ``mlflow models serve`` (``pyfunc``,
``mlflow_service``). The click commands live in ``fer_experiments.cli.serve``."""
