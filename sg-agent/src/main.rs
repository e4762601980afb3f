fn main() -> std::process::ExitCode {
    sg_agent::cli::main()
}
