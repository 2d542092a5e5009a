"""The ``agentiam`` command line: thin commands over the services."""
