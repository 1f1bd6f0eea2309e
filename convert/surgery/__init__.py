"""The pass, pure PyTorch: trace -> find -> plan -> factorize -> rewrite -> verify (README.md has the flow).

Its public names are exported by `convert`; this package imports nothing itself, so that its modules can be
imported one by one (convert.conversion needs only convert.surgery.apply).
"""
