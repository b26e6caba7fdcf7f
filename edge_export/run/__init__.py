"""The export run: plan -> export each recipe -> bundle -> validate -> measure; re-validate and
bench an existing bundle. The only room that drives targets, validation and devices together."""
