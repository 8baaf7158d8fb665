"""Data preparation (download, tokenize, split): sources to the chat schema, tokenization, the split, metrics/data.json's model."""
