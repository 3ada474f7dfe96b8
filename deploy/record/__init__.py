"""The local journal of deploys and the revision recorded on the host."""
