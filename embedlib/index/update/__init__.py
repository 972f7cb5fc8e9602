"""Changing a published index: upserts and deletes as a new version, drift, retraining,
and gc of old versions."""
