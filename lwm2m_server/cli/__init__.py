"""The tinymlaas command line: one sub-command per operator task."""
