"""The `binome` command line: every command is an API call, built from the method registry."""
