"""The process model: composition root, workers, the spawner and the command line."""
