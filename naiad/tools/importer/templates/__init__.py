"""Files ``naiad import`` copies into model repositories (not imported by naiad itself)."""
