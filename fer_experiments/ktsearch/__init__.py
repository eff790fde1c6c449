"""keras-tuner as a second search engine over the same YAML spaces (the only package that imports keras_tuner,
beside the space adapter in ``fer_experiments.spaces.kerastuner``)."""
