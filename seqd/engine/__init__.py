"""The sending side: templates, timing, the dispatcher."""
