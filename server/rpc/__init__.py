"""Generated from proto/converter.proto by `python proto/generate.py`: never edit these files by hand."""
