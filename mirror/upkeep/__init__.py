"""Looking after a mirror, above the store: what cache_dir holds (scan), its status and its
verification, pruning and gc, the record of wanted views, AllenSDK's record, adopting an
AllenSDK cache. The store (mirror/store/) knows bytes and names only and imports none of this."""
