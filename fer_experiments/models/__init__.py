"""The CNN family: ``builder`` turns params into an uncompiled ``keras.Model`` (pure, no I/O), ``presets`` holds the
2018 study's networks, ``predict`` runs a model on uint8 images."""
