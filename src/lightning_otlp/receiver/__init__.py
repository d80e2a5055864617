"""The OTLP receiver: transports, then one pipeline (decode, route) handing batches to a store."""
