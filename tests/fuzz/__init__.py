"""Fuzz targets over every parser of untrusted input, their runner (`make fuzz`) and their reproducers."""
