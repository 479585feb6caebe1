//! Taskotron formula: parse, validate, substitute, run directives, ResultYAML/TAP13.
