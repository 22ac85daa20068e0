"""Example afd-cli plug-ins (see the docs page "Write your own strategy or compressor")."""
