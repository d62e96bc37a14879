"""Course toolkit."""
