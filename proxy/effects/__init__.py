"""Side effects behind small executors: atomic files, the users file's live view, name
resolution, log files, Unix accounts, the stdio relay."""
