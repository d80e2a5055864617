.venv/bin/python examples/quickstart.py
.venv/bin/lightning-otlp rollouts               # a table on a terminal; AttemptedRollout JSON Lines into a pipe
