*** Comments ***
Boot EdgeProp's firmware on Renode for each board, train a model over the UART
socket with the host CLI, and check the loss it reports. Run by `make test-renode`
(tests/renode/run.py), which passes ${REPO} (the repository root), ${PYTHON}
(the project venv's python) and ${BOARDS} (the boards to run, space-separated)
and skips with the reason when neither `renode-test` nor `renode-run` is installed.
The same training the pytest suite runs on QEMU: both expose the UART as a TCP
socket, so the host side is the unchanged `host stream --port socket://...`.

*** Settings ***
Library           Process
Library           OperatingSystem
Resource          ${RENODEKEYWORDS}
Suite Setup       Setup
Suite Teardown    Teardown
Test Teardown     Test Teardown

*** Variables ***
${REPO}           ${CURDIR}/../..
${PYTHON}         python3
${PORT}           4321
${MODEL}          mlp-digits
${DATASET}        digits
${EPOCHS}         1
# wall-clock limit for the host's whole run (upload, one epoch, evaluations)
${RUN_TIMEOUT}    600s

*** Keywords ***
Boot Board
    [Arguments]    ${board}
    Execute Command    $elf=@${REPO}/build/${board}/edgeprop.elf
    Execute Command    $port=${PORT}
    Execute Command    path add @${REPO}
    Execute Command    include @${REPO}/boards/${board}/${board}.resc
    Start Emulation

Train And Check Loss
    [Arguments]    ${board}
    Boot Board    ${board}
    ${runs}=    Set Variable    ${OUTPUT DIR}/runs-${board}
    ${r}=    Run Process    ${PYTHON}    -m    host    stream    --port    socket://127.0.0.1:${PORT}
    ...    --board    ${board}    --model    ${MODEL}    --dataset    ${DATASET}    --epochs    ${EPOCHS}
    ...    --batch    16    --json    --runs-dir    ${runs}
    ...    cwd=${REPO}    timeout=${RUN_TIMEOUT}    stderr=STDOUT
    Log    ${r.stdout}
    Should Be Equal As Integers    ${r.rc}    0    host stream failed on ${board}: ${r.stdout}
    ${summary}=    Evaluate    json.loads($r.stdout[$r.stdout.index('{'):])    modules=json
    ${before}=    Evaluate    float($summary['loss_before'])
    ${after}=    Evaluate    float($summary['loss_after'])
    # the device's reported held-out loss is finite and training lowered it
    Should Be True    math.isfinite(${after})    modules=math
    Should Be True    ${after} < ${before}    ${board}: loss ${before} -> ${after} did not fall

*** Test Cases ***
Should Train On mps2-an386
    [Tags]    mps2-an386
    Train And Check Loss    mps2-an386

Should Train On mps2-an500
    [Tags]    mps2-an500
    Train And Check Loss    mps2-an500

Should Train On mps3-an547
    [Tags]    mps3-an547
    Train And Check Loss    mps3-an547

Should Train On netduinoplus2
    [Tags]    netduinoplus2
    Train And Check Loss    netduinoplus2

Should Train On nucleo-f446re
    [Tags]    nucleo-f446re
    Train And Check Loss    nucleo-f446re

Should Train On gap9
    [Tags]    gap9
    Train And Check Loss    gap9
