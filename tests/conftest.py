"""charlm is installed editable by `make install`. Importing it first selects
tf-keras before any test module imports TensorFlow."""

import charlm  # noqa: F401
