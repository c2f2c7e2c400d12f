"""The data path: text from its source to the windows each training worker
reads. Imports only charlm's floor."""
