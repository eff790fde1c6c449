"""fer-exp: experiment tracking and hyperparameter search for facial expression recognition."""

__version__ = "0.1.0"

#: FER2013 label ids 0-6, in order.
EXPRESSIONS: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
NUM_CLASSES = len(EXPRESSIONS)
IMAGE_SIZE = 48
#: The three FER2013 splits and their roles: train on the first, select/prune on the second, report the third.
SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
