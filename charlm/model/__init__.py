"""The char-LSTM, its generation kernels and its checkpoint format: what
training and generation share. Imports only charlm's floor and data."""
