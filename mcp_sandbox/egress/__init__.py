"""The egress allow-list: a proxy in each sandbox whose connections the server checks and makes."""
