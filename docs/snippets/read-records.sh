.venv/bin/lightning-otlp rollouts               # a table on a terminal; AttemptedRollout JSON Lines into a pipe
.venv/bin/lightning-otlp rollouts --json | jq .status
.venv/bin/lightning-otlp spans --rollout ro-0123456789ab   # Span JSON Lines, in sequence order
