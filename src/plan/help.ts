/**
 * What the command line needs to know of the plan subcommands before loading them: their
 * names and their help. Kept apart from `cli.ts`, which loads the scheduler, the state stores
 * and a YAML parser: a migration run never needs them (measured: 90 ms of start-up).
 *
 * @module
 */

/** The subcommands. */
export const SUBCOMMANDS = ["plan", "schedule", "status", "report"] as const;

/**
 * Whether a command line is a subcommand rather than a migration.
 * @param argv The arguments.
 * @returns True for `plan ...`, `schedule ...`, `status ...` without `-i`.
 */
export function isSubcommand(argv: readonly string[]): boolean {
  return (SUBCOMMANDS as readonly string[]).includes(argv[0] ?? "") &&
    !argv.includes("-i") && !argv.includes("--i");
}

/** Help for the subcommands. */
export const PLAN_HELP = `Many VMs from a plan file (JSON or YAML; schema/plan.schema.json):
  vmshift plan validate PLAN  Check a plan; every error names the VM and the field
  vmshift plan show PLAN      The plan with its defaults applied, windows, command lines
  vmshift schedule PLAN       Migrate the plan's VMs in its windows and limits, as child
                              vmshift runs; ends when every VM is done or failed
  vmshift status PLAN         Every VM's state, attempts, bytes, duration, reason
  vmshift report PLAN [--output FILE]
                              An HTML report of the plan (default: PLAN's name with .html)
Options:
  --state FILE                The state (default: PLAN's name with .state.db, SQLite)
  --state postgres://USER@HOST[:PORT]/DB
                              Share the plan between the schedulers of several conversion
                              hosts through PostgreSQL (password in PGPASSWORD, never in the URL)
  --plan-id ID                The plan's key in a shared database (default: PLAN's file name)
  --lease DURATION            A host's runs are reclaimed this long after its last heartbeat
                              (default 30s)
  --listen HOST:PORT          vmshift schedule: serve a live status page (read-only; loopback
                              unless --listen-token-file FILE gives the token it then needs)
  --machine-readable, -v
`;
