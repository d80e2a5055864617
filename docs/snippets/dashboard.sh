lightning-otlp serve --dashboard auto    # the dashboard of the agentlightning installed beside it
lightning-otlp serve --dashboard /opt/agentlightning/dashboard    # or any copy of its directory
