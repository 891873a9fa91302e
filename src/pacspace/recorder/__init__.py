"""The provider's recorder: usage events in, one delta per relationship per cadence window out."""
