"""The control plane: config, snapshot build and compile, the last good state; never on the query path."""
