/* nexo: command-line dispatch. The work is done by the modules; see `nexo help`. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bus/bus.h"
#include "channels/channels.h"
#include "channels/policy.h"
#include "config/config.h"
#include "core/clock.h"
#include "core/log.h"
#include "daemon/daemon.h"
#include "mcp/server.h"
#include "runtime/runtime.h"
#include "store/history.h"

struct cli {
    const char *command;
    const char *arg;          /* check-config DIR, help COMMAND */
    const char *agent;        /* chat --agent */
    const char *session;      /* chat --session */
    int sub_argc;             /* transcripts, dlq: the words after the command */
    char **sub_argv;
    const char *config_dir;
    bool has_config_dir;
    const char *data_dir;
    const char *log_level;
    bool log_json;
    struct nx_daemon_opts run;
};

static const char usage_main[] =
    "nexo - a multi-agent LLM gateway\n"
    "\n"
    "Usage: nexo [COMMAND] [OPTIONS]\n"
    "\n"
    "Commands:\n"
    "  run                   start the gateway (the default when no command is given)\n"
    "  check-config [DIR]    validate a configuration directory, list every problem\n"
    "  chat [--agent ID]     talk to an agent in the terminal (streaming; Ctrl-C cancels a reply)\n"
    "  mcp-server [--agent ID]  serve agents as MCP tools over stdio (JSON-RPC lines)\n"
    "  transcripts search Q  search conversation transcripts [--agent ID] [--limit N] [--json]\n"
    "  dlq list|retry ID|retry --all|purge   inspect and replay dead-lettered bus events\n"
    "  pairing list|approve CODE|revoke CHANNEL SENDER   channel senders waiting for approval\n"
    "  version               print the version\n"
    "  help [COMMAND]        show help for nexo or a command\n"
    "\n"
    "Options:\n"
    "  --config DIR          configuration directory (env NEXO_CONFIG; default ./config when it\n"
    "                        exists, else the embedded defaults)\n"
    "  --data DIR            data directory (env NEXO_DATA; default ./data)\n"
    "  --log-level LEVEL     trace, debug, info, warn, error or off (default info)\n"
    "  --log-json            log JSON lines instead of human-readable lines\n"
    "  --listen ADDR         gateway listener, host:port (overrides gateway.yaml listen)\n"
    "  --metrics-listen ADDR metrics listener (overrides gateway.yaml metrics_listen)\n"
    "  --admin-listen ADDR   admin listener (overrides gateway.yaml admin_listen)\n"
    "  -h, --help            this help;  -V, --version  the version\n"
    "\n"
    "Exit codes:\n"
    "  0 success   1 runtime failure   2 bad command line   3 invalid configuration\n"
    "  4 cannot listen (address in use, or off-loopback without auth_token)\n"
    "  5 forced exit by a second stop signal\n"
    "\n"
    "Signals: SIGTERM/SIGINT stop gracefully (a second one exits at once); SIGHUP reloads the\n"
    "configuration (an invalid one is reported and the running one kept).\n"
    "Docs: docs/ in the source tree (configuration.md, operations.md, http.md).\n";

static const char usage_run[] =
    "Usage: nexo run [--config DIR] [--data DIR] [--listen ADDR] [--metrics-listen ADDR]\n"
    "                [--admin-listen ADDR] [--log-level LEVEL] [--log-json]\n"
    "                [--role all|gateway|agents] [--agents ID,ID...]\n"
    "\n"
    "Starts the gateway: the gateway listener (default 127.0.0.1:8080: /healthz, /readyz, the\n"
    "APIs), the metrics listener (127.0.0.1:9090: /metrics) and the admin listener\n"
    "(127.0.0.1:9091). Ready when /readyz answers 200; with $NOTIFY_SOCKET set, also sends\n"
    "READY=1 there (systemd Type=notify). Refuses to listen off loopback without auth_token.\n"
    "Roles (docs/scaling.md): all (default) runs everything in this process; gateway runs the\n"
    "listeners, channels and API and publishes matched channel messages as routed work;\n"
    "agents runs the agent runtime on routed work for the agents in --agents (default: all\n"
    "configured). gateway and agents need broker.yaml type nats (JetStream when available).\n"
    "Exit codes: 0 after a graceful stop, 1 runtime failure, 3 invalid configuration,\n"
    "4 cannot listen, 5 forced by a second stop signal.\n";

static const char usage_check[] =
    "Usage: nexo check-config [DIR]\n"
    "\n"
    "Loads the configuration directory DIR (default: --config, $NEXO_CONFIG or ./config) and\n"
    "prints every problem as file:line:col: message on stderr. Exit code 0 when valid,\n"
    "3 when not.\n";

static const char usage_chat[] =
    "Usage: nexo chat [--agent ID] [--session NAME] [--config DIR] [--data DIR]\n"
    "\n"
    "A terminal conversation with an agent (default: the first configured), in the persistent\n"
    "session agent:<ID>:cli:<NAME> (default NAME \"terminal\"). Replies stream as they come.\n"
    "Ctrl-C cancels the reply being written; Ctrl-C at the prompt, Ctrl-D or SIGTERM quits.\n"
    "Reads one message a line from standard input when it is a pipe or a file, each sent once\n"
    "the one before is answered (lines up to 1 MiB; a terminal cuts a line at 4,095 bytes, and\n"
    "such a line is not sent: paste long text through a pipe). One chat at a time per session:\n"
    "a second one exits 1. Logs warnings and errors only, unless --log-level says more.\n";

static const char usage_mcp_server[] =
    "Usage: nexo mcp-server [--agent ID] [--config DIR] [--data DIR] [--log-level LEVEL]\n"
    "\n"
    "nexo as an MCP server over stdio: newline-delimited JSON-RPC on stdin/stdout, logs on\n"
    "stderr only. Each agent is a tool ask_<ID> {message, session?} that runs a real agent turn;\n"
    "the tools listed in mcp_server.yaml expose_tools are exported too. --agent offers that agent\n"
    "only (default: mcp_server.yaml agents, else every agent). Starts no listener. Exits 0 at\n"
    "the end of input, once the calls in flight are answered. The gateway serves the same over\n"
    "Streamable HTTP at /mcp when mcp_server.yaml has enabled: true (docs/mcp.md).\n";

static const char usage_transcripts[] =
    "Usage: nexo transcripts search QUERY [--agent ID] [--limit N] [--json] [--data DIR]\n"
    "\n"
    "Full-text search (SQLite FTS5 syntax) over the redacted transcripts in the data directory.\n";

static const char usage_dlq[] =
    "Usage: nexo dlq list | retry ID | retry --all | purge\n"
    "\n"
    "Dead letters: bus events that failed delivery too many times (broker.yaml dlq.max_attempts).\n"
    "retry puts them back on the queue; purge deletes them.\n";

static const char usage_pairing[] =
    "Usage: nexo pairing list [--json] | approve CODE | revoke CHANNEL[.INSTANCE] SENDER\n"
    "\n"
    "Channel instances with sender_policy: pairing answer an unknown sender once with a pairing\n"
    "code and ignore them until an operator approves it. list shows pending codes and approved\n"
    "senders; approve CODE lets that sender in (a running nexo notices within a second); revoke\n"
    "removes an approved sender or a pending code. Works on the data directory's database\n"
    "(--data DIR, before or after the command). See docs/channels.md.\n";

static const char usage_version[] = "Usage: nexo version\n\nPrints the version.\n";

static const char usage_help[] = "Usage: nexo help [COMMAND]\n";

struct command {
    const char *name;
    const char *usage;
};

static const struct command commands[] = {
    {"run", usage_run},
    {"check-config", usage_check},
    {"chat", usage_chat},
    {"mcp-server", usage_mcp_server},
    {"transcripts", usage_transcripts},
    {"dlq", usage_dlq},
    {"pairing", usage_pairing},
    {"version", usage_version},
    {"help", usage_help},
};

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    }
    return NULL;
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "nexo: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nRun 'nexo help' for usage.\n");
    va_end(ap);
    return NX_EXIT_USAGE;
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* --name VALUE or --name=VALUE. */
static int take_value(int argc, char **argv, int *i, const char *name, const char **out)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *out = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *out = argv[++*i];
    return 1;
}

static int parse_listen(const char *flag, const char *v, struct nx_listen *out, bool *has)
{
    if (nx_listen_parse(v, out) < 0) {
        fprintf(stderr, "nexo: %s: bad address \"%s\" (expected host:port, e.g. 127.0.0.1:8080)\n",
                flag, v);
        return NX_EXIT_USAGE;
    }
    *has = true;
    return 0;
}

/* The options of every command, wherever they stand (--config, --data, --log-level with their
 * value, --log-json): *taken says whether argv[*i] was one. 0, or a usage error's exit code. */
static int take_global(int argc, char **argv, int *i, struct cli *c, bool *taken)
{
    static const char *const valued[] = {"--config", "--data", "--log-level"};
    const char *v = NULL;

    *taken = strcmp(argv[*i], "--log-json") == 0;
    if (*taken) {
        c->log_json = true;
        return 0;
    }
    for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++) {
        int r = take_value(argc, argv, i, valued[k], &v);
        if (r < 0)
            return usage_error("%s needs a value", valued[k]);
        if (r == 0)
            continue;
        *taken = true;
        if (k == 0) {
            c->config_dir = v;
            c->has_config_dir = true;
        } else if (k == 1) {
            c->data_dir = v;
        } else {
            c->log_level = v;
        }
        return 0;
    }
    return 0;
}

static int parse_args(int argc, char **argv, struct cli *c)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int r;
        if (c->command && (strcmp(c->command, "transcripts") == 0 || strcmp(c->command, "dlq") == 0 ||
                           strcmp(c->command, "pairing") == 0)) {
            /* everything after these commands is theirs (argv[0] is the command word), but the
             * global options, wherever they are: kept in place, in order */
            char **sub = argv + i - 1;
            int n = 1;
            bool is_opts_done = false; /* after "--", which the command sees too, nothing is ours */
            for (; i < argc; i++) {
                bool is_global = false;
                if (!is_opts_done && (r = take_global(argc, argv, &i, c, &is_global)))
                    return r;
                is_opts_done = is_opts_done || strcmp(argv[i], "--") == 0;
                if (!is_global)
                    sub[n++] = argv[i];
            }
            sub[0] = (char *)c->command;
            c->sub_argc = n;
            c->sub_argv = sub;
            bool is_help_taken = strcmp(c->command, "transcripts") != 0; /* (the command's own) */
            for (int k = 1; k < n && is_help_taken && strcmp(sub[k], "--") != 0; k++) {
                if (strcmp(sub[k], "-h") == 0 || strcmp(sub[k], "--help") == 0) {
                    c->arg = c->command; /* dlq and pairing: the command's whole help */
                    c->command = "help";
                }
            }
            break;
        }
        if (c->command && strcmp(c->command, "mcp-server") == 0) {
            if ((r = take_value(argc, argv, &i, "--agent", &v)) < 0)
                return usage_error("--agent needs a value");
            if (r > 0) {
                c->agent = v;
                continue;
            }
        }
        if (c->command && strcmp(c->command, "chat") == 0) {
            if ((r = take_value(argc, argv, &i, "--agent", &v)) < 0)
                return usage_error("--agent needs a value");
            if (r > 0) {
                c->agent = v;
                continue;
            }
            if ((r = take_value(argc, argv, &i, "--session", &v)) < 0)
                return usage_error("--session needs a value");
            if (r > 0) {
                c->session = v;
                continue;
            }
        }
        if (!c->command || strcmp(c->command, "run") == 0) {
            if ((r = take_value(argc, argv, &i, "--role", &v)) < 0)
                return usage_error("--role needs a value (all, gateway or agents)");
            if (r > 0) {
                if (strcmp(v, "all") && strcmp(v, "gateway") && strcmp(v, "agents"))
                    return usage_error("--role %s: expected all, gateway or agents", v);
                c->run.role = v;
                continue;
            }
            if ((r = take_value(argc, argv, &i, "--agents", &v)) < 0 || (r > 0 && !*v))
                return usage_error("--agents needs a comma-separated list of agent ids");
            if (r > 0) {
                c->run.agents = v;
                continue;
            }
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            c->arg = c->command;
            c->command = "help";
            continue;
        }
        if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
            c->command = "version";
            continue;
        }
        bool matched;
        if ((r = take_global(argc, argv, &i, c, &matched)))
            return r;
        static const char *const listens[] = {"--listen", "--metrics-listen", "--admin-listen"};
        for (size_t k = 0; k < sizeof listens / sizeof listens[0] && !matched; k++) {
            if ((r = take_value(argc, argv, &i, listens[k], &v)) < 0)
                return usage_error("%s needs a value", listens[k]);
            if (r == 0)
                continue;
            matched = true;
            switch (k) {
            case 0:
                if ((r = parse_listen(a, v, &c->run.listen, &c->run.has_listen)))
                    return r;
                break;
            case 1:
                if ((r = parse_listen(a, v, &c->run.metrics_listen, &c->run.has_metrics_listen)))
                    return r;
                break;
            case 2:
                if ((r = parse_listen(a, v, &c->run.admin_listen, &c->run.has_admin_listen)))
                    return r;
                break;
            }
        }
        if (matched)
            continue;
        if (a[0] == '-')
            return usage_error("unknown option %s", a);
        if (!c->command) {
            if (!find_command(a))
                return usage_error("unknown command \"%s\"", a);
            c->command = a;
        } else if (!c->arg && (strcmp(c->command, "check-config") == 0 ||
                               strcmp(c->command, "help") == 0)) {
            c->arg = a;
        } else {
            return usage_error("unexpected argument \"%s\"", a);
        }
    }
    return 0;
}

static int cmd_help(const char *topic)
{
    if (!topic) {
        fputs(usage_main, stdout);
        return NX_EXIT_OK;
    }
    const struct command *cmd = find_command(topic);
    if (!cmd)
        return usage_error("no help for unknown command \"%s\"", topic);
    fputs(cmd->usage, stdout);
    return NX_EXIT_OK;
}

static int cmd_check_config(const char *dir)
{
    struct nx_config *cfg = NULL;
    struct nx_diags diags;
    nx_diags_init(&diags);
    int rc = nx_config_load(dir, &cfg, &diags);
    /* Channel plugin files are checked by each channel type's own table. */
    if (rc == 0 && nx_channels_check(cfg, &diags) < 0) {
        nx_config_unref(cfg);
        rc = NX_EXIT_CONFIG;
    }
    if (rc == 0) { /* mcp_server.yaml has its own table (src/mcp/server_conf.c) */
        struct nx_mcp_srv_conf msc;
        if (nx_mcp_srv_conf_load(cfg, &msc, &diags) < 0) {
            nx_config_unref(cfg);
            rc = NX_EXIT_CONFIG;
        }
        nx_mcp_srv_conf_cleanup(&msc);
    }
    nx_diags_print(&diags, stderr);
    if (rc != 0) {
        fprintf(stderr, "%s: %zu problem%s found\n", dir ? dir : "(embedded defaults)", diags.n,
                diags.n == 1 ? "" : "s");
        nx_diags_cleanup(&diags);
        return NX_EXIT_CONFIG;
    }
    const struct nx_agent_conf *acs = NULL;
    if (nx_config_agents(cfg, &acs) == 0) /* (agents: [] or an empty agents.yaml; no file: main) */
        fprintf(stderr, "%s: warning: no agents configured: every request for a model gets 404 "
                        "(without agents.yaml, the default agent main is used)\n",
                dir ? dir : "(embedded defaults)");
    printf("%s: configuration OK\n", dir ? dir : "(embedded defaults)");
    nx_diags_cleanup(&diags);
    nx_config_unref(cfg);
    return NX_EXIT_OK;
}

int main(int argc, char **argv)
{
    struct cli c;
    int rc;

    memset(&c, 0, sizeof c);
    c.run.launch_ns = nx_mono_ns();
    /* libuv's thread pool (4 threads unless set) runs name lookups, at most half of it at once:
     * http_fetch to names whose DNS never answers held every slot, for every agent, for the
     * resolver's own timeout. Read once, at its first use. */
    setenv("UV_THREADPOOL_SIZE", "8", 0);
    if ((rc = parse_args(argc, argv, &c)) != 0)
        return rc;
    if (!c.command)
        c.command = "run";

    if (strcmp(c.command, "help") == 0)
        return cmd_help(c.arg);
    if (strcmp(c.command, "version") == 0) {
        printf("nexo %s\n", NEXO_VERSION);
        return NX_EXIT_OK;
    }

    if (c.log_level) {
        enum nx_log_level lvl;
        if (nx_log_parse_level(c.log_level, &lvl) < 0)
            return usage_error("bad --log-level \"%s\" (trace, debug, info, warn, error, off)",
                               c.log_level);
        nx_log_set_level(lvl);
        c.run.has_log_level = true;
    }
    nx_log_set_json(c.log_json);

    /* --config, then $NEXO_CONFIG, then ./config when it exists, else embedded defaults. */
    const char *config_dir = c.config_dir;
    if (!c.has_config_dir) {
        const char *env = getenv("NEXO_CONFIG");
        if (env && *env)
            config_dir = env;
        else if (is_dir("config"))
            config_dir = "config";
    }

    if (strcmp(c.command, "check-config") == 0)
        return cmd_check_config(c.arg ? c.arg : config_dir);

    if (config_dir && !is_dir(config_dir)) {
        fprintf(stderr, "nexo: configuration directory \"%s\" does not exist\n", config_dir);
        return NX_EXIT_CONFIG;
    }
    const char *data_dir = c.data_dir;
    if (!data_dir) {
        const char *env = getenv("NEXO_DATA");
        data_dir = env && *env ? env : "./data";
    }
    c.run.config_dir = config_dir;
    c.run.data_dir = data_dir;
    static char *no_args[] = {NULL, NULL};
    if (!c.sub_argv) {
        no_args[0] = (char *)c.command;
        c.sub_argv = no_args;
        c.sub_argc = 1;
    }
    if (strcmp(c.command, "transcripts") == 0)
        return nx_cmd_transcripts(c.sub_argc, c.sub_argv, data_dir);
    if (strcmp(c.command, "dlq") == 0)
        return nx_cmd_dlq(c.sub_argc, c.sub_argv, data_dir);
    if (strcmp(c.command, "pairing") == 0)
        return nx_cmd_pairing(c.sub_argc, c.sub_argv, data_dir);
    if (strcmp(c.command, "chat") == 0) {
        if (!c.run.has_log_level) /* the conversation, not start-up lines, on the terminal */
            nx_log_set_level(NX_LOG_WARN);
        return nx_chat_run(&c.run, c.agent, c.session);
    }
    if (strcmp(c.command, "mcp-server") == 0) {
        struct nx_mcp_stdio_opts mo = {.config_dir = config_dir, .data_dir = data_dir, .agent_id = c.agent};
        return nx_mcp_stdio_run(&mo);
    }
    return nx_daemon_run(&c.run);
}
