"""The scripts on top: production (the project tool), setup_diffusers, validate_diffusers; and the tools that
run the other scripts in-process (demo, smoke) or read every parser (docgen).

One module per script: build() returns its parser, run(args) does the work, main(argv) parses, runs and
prints. scripts/NAME.py only puts the package on the path and calls main(). Nothing imports this layer.
"""
