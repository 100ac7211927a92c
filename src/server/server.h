/* `generate serve` and `generate worker`: entry points called by the CLI's
 * main with argv[0] = "serve" / "worker". Return the process exit code. */
#ifndef SDGEN_SERVER_SERVER_H
#define SDGEN_SERVER_SERVER_H

int srv_serve_main(int argc, char **argv);
int srv_worker_main(int argc, char **argv);

#endif
