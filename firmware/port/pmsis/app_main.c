/*
 * app_main.c — the device loop (firmware/app/main.c) under PMSIS: its main()
 * becomes ep_app_main(), and PMSIS's main() starts the OS and runs it on the
 * fabric controller (pmsis_kickoff, the entry every PMSIS application has).
 */
#include "pmsis.h"

int ep_app_main(int argc, char **argv);

#define main ep_app_main
#include "../../app/main.c"
#undef main

static void pmsis_entry(void) {
    ep_app_main(0, NULL);
    pmsis_exit(0);
}

int main(void) {
    return pmsis_kickoff((void *)pmsis_entry);
}
