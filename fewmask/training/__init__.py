"""The training room: the Trainer (the loop, validation, meta-test), its logs and checks."""
