"""First-party plugins of detach-framework, registered through entry points like any third party."""
