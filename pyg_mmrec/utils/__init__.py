"""Small developer utilities (no effect unless used)."""
from .sync_debug import SyncEvent, SyncMonitor, assert_no_sync

__all__ = ["SyncEvent", "SyncMonitor", "assert_no_sync"]
