"""Small feature modules the claim path and the app consult: flow control, explain."""
