"""Data: sample layout, window settings, NaN handling and the collate used by every dataset."""
