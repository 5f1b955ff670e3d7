"""The mesh's services, one package each; run one with `faust -A services.<name> worker`."""
