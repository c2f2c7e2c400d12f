"""charlm: distributed training and batch generation for character-level LSTMs.

Keras 3 fails under MultiWorkerMirroredStrategy, so tf-keras (Keras 2) is
selected here, before any charlm module can import TensorFlow. Ray workers
import charlm when they unpickle its functions, so they get it too.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
