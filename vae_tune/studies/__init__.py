"""Study specs that ship with vae-tune (YAML files beside this module)."""
