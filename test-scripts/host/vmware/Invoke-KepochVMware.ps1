<#
.SYNOPSIS
    Runs kepoch rounds with live vCPU hot-add on a VMware vSphere/ESXi guest through PowerCLI.

.DESCRIPTION
    Needs VMware PowerCLI and an existing Connect-VIServer session. The VM must have "CPU Hot Add"
    enabled (it can only be switched on while the VM is powered off; enabling it disables vNUMA), run a
    Windows Server edition with dynamic partitioning, have VMware Tools running, test signing on and
    Secure Boot off. vSphere adds processors but never removes them, so each round starts from a powered-off
    VM set back to BootCpus vCPUs.

    For every round: power on with BootCpus vCPUs, copy the package and guest scripts in
    (Copy-VMGuestFile), install the driver, start `kepochctl ab --rounds 1 --strategies S --hot-add-file
    C:\kepoch\hotadd.txt` in the guest (Invoke-VMScript -RunAsync), raise the vCPU count with Set-VM -NumCpu
    while the load runs, announce the count in the hot-add file, wait for kepochctl, copy the JSON back,
    power off. kepochctl claims a hot-add (ab.hot_add.claimed) only when the guest's active processor count
    grew; the script refuses to run hot-add rounds when the guest lacks hot-add support (KUSER_SHARED_DATA
    flag 0x20) unless -NoHotAdd.

.PARAMETER VMName
    The vSphere VM.

.PARAMETER GuestCredential
    Administrator credential inside the guest.

.PARAMETER PackagePath
    Host folder with kepoch.sys, kepoch.inf and kepochctl.exe.

.PARAMETER BootCpus
    vCPUs at power-on.

.PARAMETER HotAddCpus
    vCPUs to add during the load.

.PARAMETER HotAddAfterSeconds
    Seconds after the load starts before adding.

.PARAMETER Rounds
    Rounds (strategies alternate).

.PARAMETER Strategies
    Strategies to alternate.

.PARAMETER LoadRate
    Load generator rate in operations per second.

.PARAMETER LoadSeconds
    Load duration per round.

.PARAMETER ResultsPath
    Local folder for the JSON files.

.PARAMETER NoHotAdd
    Run load-only rounds (not reported as hot-add).

.EXAMPLE
    Connect-VIServer vcenter.example.invalid
    .\Invoke-KepochVMware.ps1 -VMName kepoch-ws2022 -GuestCredential (Get-Credential) -PackagePath .\package -WhatIf
#>
[CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'High')]
param(
    [Parameter(Mandatory = $true)] [string] $VMName,
    [Parameter(Mandatory = $true)] [System.Management.Automation.PSCredential] $GuestCredential,
    [Parameter(Mandatory = $true)] [string] $PackagePath,
    [ValidateRange(1, 768)] [int] $BootCpus = 2,
    [ValidateRange(1, 768)] [int] $HotAddCpus = 2,
    [int] $HotAddAfterSeconds = 10,
    [ValidateRange(1, 1000)] [int] $Rounds = 6,
    [string[]] $Strategies = @('lazy', 'callback', 'eager'),
    [int] $LoadRate = 100000,
    [ValidateRange(1, 86400)] [int] $LoadSeconds = 60,
    [string] $ResultsPath = (Join-Path (Get-Location) 'results'),
    [switch] $NoHotAdd
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

if (-not (Get-Command -Name Invoke-VMScript -ErrorAction SilentlyContinue)) {
    throw 'kepoch: VMware PowerCLI is not available (Install-Module VMware.PowerCLI; then Connect-VIServer).'
}
$package = (Resolve-Path -LiteralPath $PackagePath).ProviderPath
$guestScripts = Join-Path (Split-Path -Parent (Split-Path -Parent $PSScriptRoot)) 'guest'
$vm = Get-VM -Name $VMName
if (-not $NoHotAdd -and -not $vm.ExtensionData.Config.CpuHotAddEnabled) {
    throw "kepoch: CPU Hot Add is disabled on '$VMName' (power it off and enable it, or use -NoHotAdd)."
}
if (-not (Test-Path -LiteralPath $ResultsPath)) { New-Item -ItemType Directory -Path $ResultsPath -Force | Out-Null }

<#
.SYNOPSIS
    Runs a PowerShell snippet in the guest (after importing the kepoch module) and returns its output.
.PARAMETER Code
    The PowerShell code.
#>
function Invoke-KepochGuestCode {
    param([string] $Code)
    $text = "`$ErrorActionPreference = 'Stop'; Import-Module 'C:\kepoch\scripts\KepochGuest.psm1' -Force; $Code"
    $result = Invoke-VMScript -VM $VMName -GuestCredential $GuestCredential -ScriptType Powershell -ScriptText $text
    if ($result.ExitCode -ne 0) { throw "kepoch: guest command failed ($($result.ExitCode)): $($result.ScriptOutput)" }
    return "$($result.ScriptOutput)".Trim()
}

for ($round = 1; $round -le $Rounds; $round++) {
    $strategy = $Strategies[($round - 1) % $Strategies.Count]
    if (-not $PSCmdlet.ShouldProcess($VMName, "Round ${round}: power-cycle with $BootCpus vCPUs, run $strategy, hot-add $HotAddCpus")) { continue }
    $vm = Get-VM -Name $VMName
    if ($vm.PowerState -ne 'PoweredOff') { Stop-VM -VM $vm -Confirm:$false | Out-Null }
    Set-VM -VM $VMName -NumCpu $BootCpus -Confirm:$false | Out-Null
    Start-VM -VM $VMName | Out-Null
    Wait-Tools -VM $VMName -TimeoutSeconds 900 | Out-Null

    foreach ($file in @(Get-ChildItem -LiteralPath $package -File) + @(Get-ChildItem -LiteralPath $guestScripts -File)) {
        $folder = 'scripts'
        if ($file.DirectoryName -eq $package) { $folder = 'package' }
        Copy-VMGuestFile -VM $VMName -GuestCredential $GuestCredential -LocalToGuest -Force `
            -Source $file.FullName -Destination "C:\kepoch\$folder\"
    }
    $topology = Invoke-KepochGuestCode "Install-KepochDriver -PackagePath 'C:\kepoch\package' -Confirm:`$false | Out-Null; Get-KepochTopology | ConvertTo-Json -Compress" | ConvertFrom-Json
    if (-not $NoHotAdd -and -not $topology.hot_add_supported) {
        throw 'kepoch: REFUSING: the guest does not report processor hot-add support (KUSER_SHARED_DATA flag 0x20 clear); use a Server edition or -NoHotAdd.'
    }
    $guestOut = 'C:\kepoch\results\round-{0:D2}' -f $round
    $hotAddFile = 'C:\kepoch\hotadd.txt'
    $fileArg = "-HotAddFile '$hotAddFile'"
    if ($NoHotAdd) { $fileArg = '' }
    $task = Invoke-VMScript -VM $VMName -GuestCredential $GuestCredential -ScriptType Powershell -RunAsync -ScriptText `
        ("`$ErrorActionPreference = 'Stop'; Import-Module 'C:\kepoch\scripts\KepochGuest.psm1' -Force; " +
        "Invoke-KepochAB -OutputPath '$guestOut' -Rounds 1 -Strategies '$strategy' -LoadRate $LoadRate -LoadSeconds $LoadSeconds $fileArg -Confirm:`$false | Out-Null")
    if (-not $NoHotAdd) {
        Start-Sleep -Seconds $HotAddAfterSeconds
        Set-VM -VM $VMName -NumCpu ($BootCpus + $HotAddCpus) -Confirm:$false | Out-Null
        $announce = Join-Path ([System.IO.Path]::GetTempPath()) 'kepoch-hotadd.txt'
        Set-Content -LiteralPath $announce -Value "$HotAddCpus"
        Copy-VMGuestFile -VM $VMName -GuestCredential $GuestCredential -LocalToGuest -Force -Source $announce -Destination $hotAddFile
    }
    $result = Wait-Task -Task $task
    if ($result.ExitCode -ne 0) { throw "kepoch: round ${round}: kepochctl ab failed in the guest: $($result.ScriptOutput)" }
    $local = Join-Path $ResultsPath ('vmware-round-{0:D2}-{1}.json' -f $round, $strategy)
    Copy-VMGuestFile -VM $VMName -GuestCredential $GuestCredential -GuestToLocal -Force -Source "$guestOut\round-01-$strategy.json" -Destination $local
    $doc = Get-Content -Raw -LiteralPath $local | ConvertFrom-Json
    Write-Host "kepoch: round $round ($strategy) -> $local (hot-add claimed: $($doc.results[0].ab.hot_add.claimed))"
    Stop-VM -VM $VMName -Confirm:$false | Out-Null
}
Write-Host "kepoch: compare with: kepoch-sim report $ResultsPath/*.json"
